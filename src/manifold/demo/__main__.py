from manifold.demo.server import main

raise SystemExit(main())
