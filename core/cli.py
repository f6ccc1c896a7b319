"""Command line placeholder."""
import argparse


def main(argv=None):
    argparse.ArgumentParser(prog="metric-cd").parse_args(argv)
