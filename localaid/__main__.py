from localaid.cli import main

raise SystemExit(main())
