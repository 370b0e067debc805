from stalerl.cli.main import main

raise SystemExit(main())
