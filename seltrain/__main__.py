from seltrain.cli import entry

entry()
