# Developer commands (the README names `make test`). Packaging: `make package`.
VERSION := $(shell sed -n "s/^version=//p" metadata.txt)
PYTHON ?= .venv/bin/python
REF ?= HEAD
DIST ?= dist
ZIP := $(DIST)/metric_change_detection-$(VERSION).zip

.PHONY: test package lint

test:  ## the whole suite, headless
	QT_QPA_PLATFORM=offscreen $(PYTHON) -m pytest $(PYTEST_ARGS)

package:  ## dist/metric_change_detection-<version>.zip from $(REF) (tests, bench, tooling excluded)
	@test -n "$(VERSION)" || { echo "no version= in metadata.txt" >&2; exit 1; }
	mkdir -p $(DIST)
	git archive --prefix=metric_change_detection/ -o $(ZIP) $(REF)
	@echo "$(ZIP)"

lint:
	.venv/bin/ruff check .
