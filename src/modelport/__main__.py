from modelport.cli.main import cli

cli()
