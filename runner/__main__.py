from runner.commands import main

raise SystemExit(main())
