try:
    from server.cli.main import main
except ModuleNotFoundError as err:  # a dependency is missing: say how to install it
    raise SystemExit(f"Error: {err.name} is not installed; run: pip install -e .") from None

raise SystemExit(main())
