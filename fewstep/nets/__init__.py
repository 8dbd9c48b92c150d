"""Raw networks: they see (x, c_noise, class_labels) and know nothing of noise schedules."""
