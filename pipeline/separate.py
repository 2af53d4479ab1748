"""DVC stage `separate`: the test tracks of data/cache through models/weights.pt -> results/estimates."""

import lightsaft.environment  # noqa: F401  (first: without our packages, one line instead of a traceback)
from lightsaft import layout
from lightsaft.data.cache import Cache
from lightsaft.separation.estimates import separate_tracks
from lightsaft.stage import run_stage


def main(params: dict, args) -> None:
    rt = params["runtime"]["separate"]
    separate_tracks(
        layout.WEIGHTS,
        Cache(layout.CACHE),
        layout.ESTIMATES,
        **params["separate"],
        batch_size=rt["batch_size"],
        device=rt["device"],
    )


if __name__ == "__main__":
    run_stage("separate", main)
