from realignkit.cli import main

main()
