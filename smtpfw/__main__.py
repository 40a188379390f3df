from smtpfw.cli import main

raise SystemExit(main())
