"""Lambda's REST API (2015-03-31) on router's HTTP listener, so boto3, the AWS CLI and other AWS SDK
clients pointed at `endpoint_url` invoke functions and manage event source mappings.

`api` routes and answers requests, `sigv4` authenticates them, `mapping_shapes` and
`function_shapes` translate between Lambda's PascalCase bodies and the config models (one
validation, two spellings), `errors` speaks Lambda's error protocol and `registry` keeps the
mappings created through the API, durably, for one instance or for every replica.
"""
