"""Scale-out on NVIDIA Dynamo: our engine as a Dynamo backend worker, and a launcher that runs
Dynamo's OpenAI frontend plus N workers on one machine (file discovery, TCP requests, ZMQ events).

Dynamo is an optional extra (`pip install 'autoglm-trt[dynamo]'`); only `runtime.dynamo.worker`
imports it, and `runtime.dynamo.compat` says how to install it when it is missing. The other
modules (the engine loop, the KV event tracker, the launcher) run without it.
"""
