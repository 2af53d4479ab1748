"""DVC stage `train`: train LightSAFT on the spectrogram cache, tracked in MLflow."""

from lightsaft.stage import run_stage
from lightsaft.train import train

if __name__ == "__main__":
    run_stage("train", lambda params, args: train(params), handle_sigterm=False)
