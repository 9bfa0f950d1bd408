"""Container IO: stdio FIFOs and the CRI-format container log writer."""
