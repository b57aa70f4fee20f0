"""Data: readers for the datasets' own formats, typed samples, transforms, sampling, and a
generated world written in those formats."""
