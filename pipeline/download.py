"""DVC stage `download`: find, fetch or generate the data set; write data/raw/dataset.json."""

from lightsaft.download import download
from lightsaft.stage import run_stage

if __name__ == "__main__":
    run_stage(
        "download",
        lambda params, args: print(f"wrote {download(params['data'], args.out)}"),
        add_arguments=lambda parser: parser.add_argument("--out", default="data/raw"),
    )
