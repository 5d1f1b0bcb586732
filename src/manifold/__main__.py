from manifold.early import main

main()
