"""Triton kernels. Import lazily: ``TRITON_INTERPRET=1`` must be set before these modules load."""
