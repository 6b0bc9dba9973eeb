from klockproxy.cli import main

raise SystemExit(main())
