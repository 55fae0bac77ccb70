from .cli import main

main(prog_name="qcow2check")
