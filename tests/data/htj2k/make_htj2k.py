"""Regenerate the HTJ2K codestreams next to this script (not run by the tests; needs ~700 MB of ITK):

    python -m venv /tmp/htj && /tmp/htj/bin/pip install itk-ioopenjph pydicom
    /tmp/htj/bin/python tests/data/htj2k/make_htj2k.py

Each ``ge_NN.dcm.j2c`` is slice ``NN.dcm`` of shared/fixtures/ge_head_ct_tilt (signed int16 stored values) encoded
losslessly by OpenJPH (itk-ioopenjph), an HTJ2K encoder independent of the decoder ppihd uses (openjpeg via
pylibjpeg-openjpeg). tests/test_transfer_syntax.py wraps them in the fixture's headers as HTJ2K Lossless."""
import os

import itk
import numpy as np
import pydicom

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "..", "..", "..", "..", "shared", "fixtures", "ge_head_ct_tilt")
for n in ("12", "13", "14", "15"):
    a = pydicom.dcmread(os.path.join(FIXTURE, n + ".dcm")).pixel_array
    out = os.path.join(HERE, f"ge_{n}.dcm.j2c")
    itk.imwrite(itk.image_from_array(np.ascontiguousarray(a)), out)
    back = itk.array_from_image(itk.imread(out))
    assert back.dtype == a.dtype and np.array_equal(back, a), n
    print(out, os.path.getsize(out))
