from vqgen.cli import main

main()
