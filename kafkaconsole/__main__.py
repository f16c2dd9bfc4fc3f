from kafkaconsole.cli.app import main

main()
