from cra.cloud.cli import main

raise SystemExit(main())
