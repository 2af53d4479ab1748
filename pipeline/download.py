"""DVC stage `download`: find, fetch or generate the data set; write data/raw/dataset.json."""

import lightsaft.environment  # noqa: F401  (first: without our packages, one line instead of a traceback)
from lightsaft import layout
from lightsaft.download import download
from lightsaft.stage import run_stage


def main(params: dict, args) -> None:
    print(f"wrote {download(params['data'], layout.RAW)}")


if __name__ == "__main__":
    run_stage("download", main)
