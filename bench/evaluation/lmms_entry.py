"""The ``lmms_eval.models`` entry point (extra ``lmms``): lmms-eval finds ``--model viperbench`` here."""

from lmms_eval.models.registry_v2 import ModelManifest

MANIFEST = ModelManifest(model_id="viperbench", simple_class_path="bench.evaluation.lmms_model.ViperbenchLMMS")
