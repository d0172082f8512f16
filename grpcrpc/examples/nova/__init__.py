"""nova-scheduler and nova-compute as typed grpcrpc contracts (from proto/examples/nova/)."""
