from atp_viz.cli.main import main

raise SystemExit(main())
