"""Pure decision logic shared by the simulator and the real testbed: no clocks, sleeps or I/O."""
