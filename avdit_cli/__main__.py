"""`python -m avdit_cli ...` (and `torchrun -m avdit_cli ...`) run the same app as the `avdit` script."""

from avdit_cli.cli.app import main

main()
