"""Lightning callbacks: what is not a loss (schedules, warm starts, image grids, guards)."""
