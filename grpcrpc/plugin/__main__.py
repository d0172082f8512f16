"""`python -m grpcrpc.plugin`: the protoc plugin, for when `protoc-gen-grpcrpc` is not on PATH."""

from grpcrpc.plugin.main import main

if __name__ == "__main__":
    main()
