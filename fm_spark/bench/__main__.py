from fm_spark.bench import main

raise SystemExit(main())
