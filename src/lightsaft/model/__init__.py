"""The LightSAFT / LaSAFT conditioned U-Net: the network only (its params: ``params.py``; weight
files: :mod:`lightsaft.weights`). Kept free of imports, so that reading ``model.params`` stays light."""
