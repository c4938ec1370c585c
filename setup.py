import os
import re

from setuptools import find_packages, setup

here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "ppihd", "__init__.py"), encoding="utf-8") as f:
    version = re.search(r'__version__ = "([^"]+)"', f.read()).group(1)
with open(os.path.join(here, "README.md"), encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="ppihd",
    version=version,
    description="Transformer-based intracranial hemorrhage detection on head-CT DICOM series (PaddlePaddle)",
    long_description=long_description,
    long_description_content_type="text/markdown",
    packages=find_packages(include=["ppihd", "ppihd.*"]),
    python_requires=">=3.10",  # pydicom 3
    # paddlepaddle (CPU) or paddlepaddle-gpu is installed separately, see requirements.txt.
    # GDCM and the pylibjpeg plug-ins decode every compressed CT transfer syntax (requirements.txt says which does
    # what); 12-bit lossy JPEG needs the GPL-3.0 pylibjpeg-libjpeg, the [gpl] extra
    install_requires=["numpy", "pandas", "pydicom>=3.0.1", "highdicom>=0.28,<0.29", "pylibjpeg>=2.0", "python-gdcm>=3.0.10",
                      "pylibjpeg-openjpeg>=2.0", "pylibjpeg-rle>=2.0", "opencv-python-headless", "PyYAML", "tqdm",
                      "matplotlib", "scikit-learn", "visualdl>=2.5.3,<2.6"],
    extras_require={"gpl": ["pylibjpeg-libjpeg>=2.1"], "onnx": ["paddle2onnx", "onnxruntime"]},
    license="Apache-2.0",
)
