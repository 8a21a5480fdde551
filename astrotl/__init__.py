"""astrotl: deep transfer learning on astronomical survey data (JAX/Flax).

Data flows one way: survey files -> readers (`astrotl.io`) -> preprocessing
(`astrotl.preprocess`) -> datasets -> sharded batches -> Flax models
(`astrotl.models`) -> metrics, checkpoints, catalogs. Transfer learning is a few
pure functions on parameter pytrees (`astrotl.surgery`).
"""

__version__ = "0.1.0"
