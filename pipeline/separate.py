"""DVC stage `separate`: the test tracks of data/cache through models/weights.pt -> results/estimates."""

from lightsaft.data.cache import Cache
from lightsaft.separate import separate_tracks
from lightsaft.stage import run_stage


def separate(params: dict, args) -> None:
    separate_tracks("models/weights.pt", Cache("data/cache"), "results/estimates", params["separate"])


if __name__ == "__main__":
    run_stage("separate", separate)
