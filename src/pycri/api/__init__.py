"""The CRI gRPC seam: the grpc.aio server on a unix socket and error mapping."""
