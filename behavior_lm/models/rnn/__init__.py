"""GRU/LSTM baselines, registered with the Auto classes on import (no trust_remote_code)."""
from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM,
                          AutoModelForSequenceClassification)

from .configuration_behavior_rnn import BehaviorRNNConfig
from .modeling_behavior_rnn import (BehaviorRNNForCausalLM, BehaviorRNNForSequenceClassification,
                                    BehaviorRNNModel, BehaviorRNNPreTrainedModel)

AutoConfig.register(BehaviorRNNConfig.model_type, BehaviorRNNConfig, exist_ok=True)
AutoModel.register(BehaviorRNNConfig, BehaviorRNNModel, exist_ok=True)
AutoModelForCausalLM.register(BehaviorRNNConfig, BehaviorRNNForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(BehaviorRNNConfig, BehaviorRNNForSequenceClassification,
                                            exist_ok=True)

__all__ = ["BehaviorRNNConfig", "BehaviorRNNModel", "BehaviorRNNPreTrainedModel",
           "BehaviorRNNForCausalLM", "BehaviorRNNForSequenceClassification"]
