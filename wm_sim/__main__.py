from wm_sim.cli import main; raise SystemExit(main())
