"""Episode datasets: zarr v3 stores in the diffusion_policy layout with LeRobot key names."""
