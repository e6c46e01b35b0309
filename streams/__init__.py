"""The adapters around the core: the Faust app and agents, Kafka topics, Redis, the CLI."""
