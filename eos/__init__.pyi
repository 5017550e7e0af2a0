from connectors.serdes import BYTES as BYTES, JSON as JSON, PICKLE as PICKLE, STRING as STRING
from connectors.serdes import Serde as Serde, SerdeError as SerdeError
from service.job.api import Job as Job, KeyedProcessFunction as KeyedProcessFunction
from service.job.api import KeyedStream as KeyedStream, Params as Params, Stream as Stream
from statestore.codecs import JSON_CODEC as JSON_CODEC, PICKLE_CODEC as PICKLE_CODEC
