from werkstroom.cli import main

raise SystemExit(main())
