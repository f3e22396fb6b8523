"""Export of a trained CenterNet for serving and mobile: SavedModel, TFLite (LiteRT), ONNX.

TensorFlow-only code, confined to this package and `data/` (DESIGN.md,
principle 1): the artifacts are traced from the Keras model with TensorFlow
(`tf.function`, `tf.lite.TFLiteConverter`, `tf2onnx`), so export needs the
TensorFlow backend; the exported files then run without this package.

```python
import keras_centernet as kc

path = kc.export.export_model(model, "saved_models/dla34", format="tflite",
                              input_size=(512, 512), quantization="int8")
```

Every artifact decodes inside (peak extraction and top-K, as `model.predict`)
and takes float32 RGB pixels 0..255; see `export_model` for the signatures.
"""

from keras_centernet.export.exporter import FORMATS
from keras_centernet.export.exporter import QUANTIZATIONS
from keras_centernet.export.exporter import add_cli_arguments
from keras_centernet.export.exporter import default_export_dir
from keras_centernet.export.exporter import export_model
from keras_centernet.export.exporter import run_cli
from keras_centernet.export.exporter import tflite_op_names

__all__ = [
    "FORMATS",
    "QUANTIZATIONS",
    "add_cli_arguments",
    "default_export_dir",
    "export_model",
    "run_cli",
    "tflite_op_names",
]
