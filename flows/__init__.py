"""The pure compiler: a Model in, desired flows per switch out, as plain values."""
