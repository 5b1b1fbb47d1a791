from negalign.cli import main

raise SystemExit(main())
