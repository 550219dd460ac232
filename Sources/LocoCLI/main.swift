print("loco")
