from trainpipe.cli import main

raise SystemExit(main())
