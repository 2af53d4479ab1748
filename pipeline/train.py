"""DVC stage `train`: train LightSAFT on the spectrogram cache, tracked in MLflow."""

import lightsaft.environment  # noqa: F401  (first: without our packages, one line instead of a traceback)
from lightsaft.stage import run_stage
from lightsaft.training import job_step


def main(params: dict, args) -> None:
    if job_step.wanted():  # a study point on a SLURM cluster: the training runs as a job step (srun)
        raise SystemExit(job_step.launch(params["trainer"]))
    job_step.take_stop_signal()
    from lightsaft.train import train, write_outputs
    from lightsaft.training.callbacks import quiet_lightning

    quiet_lightning()
    result = train(params)
    if result is not None:  # None: a DDP rank other than zero
        write_outputs(result)


if __name__ == "__main__":
    run_stage("train", main, handle_sigterm=False)
