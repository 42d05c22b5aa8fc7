from energy_flow.runtime import disable_onednn_primitive_cache

disable_onednn_primitive_cache()

from profiler.cli import main  # noqa: E402  (after the process setting above)

raise SystemExit(main())
